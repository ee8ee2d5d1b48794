from clip_rerank.cli import main

main()
