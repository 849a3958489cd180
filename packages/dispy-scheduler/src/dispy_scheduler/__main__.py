"""Allow `python -m dispy_scheduler`."""

from dispy_scheduler.cli import main

if __name__ == "__main__":
    main()
