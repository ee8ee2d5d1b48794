from vqgan.cli import main

main()
