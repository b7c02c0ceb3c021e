from hypergpu.cli import main

main()
