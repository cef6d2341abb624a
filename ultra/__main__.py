from ultra.cli import main

main()
