from noisett_mcp.cli import main

main()
