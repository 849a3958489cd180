from dispy_node.cli import main

main()
