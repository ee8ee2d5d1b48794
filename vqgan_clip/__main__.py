from vqgan_clip.cli import main

main()
