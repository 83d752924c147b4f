from steerscope.cli import main

main()
