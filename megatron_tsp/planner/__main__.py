from megatron_tsp.planner.plan import main

main()
