from llmcloud.cli import main

main()
