"""Allow `python -m dispy_relay`."""

from dispy_relay.cli import main

if __name__ == "__main__":
    main()
