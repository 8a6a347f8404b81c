"""The training job: `python -m ringfa3.train` (Hydra app over ringfa3.configs), torchrun for several
processes. Modules: config (schema + checks), passkey / tokens / data (what each rank reads),
parallelize (mesh, cp groups, FSDP2, checkpointing, compile), engine / deepspeed_engine (the optimizer
side), checkpoint (atomic DCP), metrics / flops (what is logged), loop (the job), app (Hydra glue)."""
