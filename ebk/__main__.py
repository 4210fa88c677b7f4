from ebk.cli import main

main()
