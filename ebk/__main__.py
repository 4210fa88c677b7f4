from ebk.entry import main

main()
