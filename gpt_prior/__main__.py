from gpt_prior.cli import main

main()
