from lpmr_edge.cli import main

main()
