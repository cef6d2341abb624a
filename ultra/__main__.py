from ultra.launch import main

main()
