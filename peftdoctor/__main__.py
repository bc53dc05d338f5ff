from peftdoctor.cli.app import main

main()
