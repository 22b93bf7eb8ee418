# Two entry points for a fresh machine. Both create (once) a virtualenv
# outside the clone, keyed by a hash of setup.py, and reuse it afterwards.
# Pass extra flags with ARGS, e.g. make run ARGS="--max_events=500".

.PHONY: run test lab drift bench

run:
	venv="$$(runners/venv.sh)" && "$$venv/bin/python" -m pipelines.online_train --runner=DirectRunner $(ARGS)

test:
	venv="$$(runners/venv.sh)" && "$$venv/bin/python" -m pytest tests $(ARGS)

lab:
	venv="$$(runners/venv.sh)" && "$$venv/bin/python" -m pipelines.windowing_lab $(ARGS)

drift:
	venv="$$(runners/venv.sh)" && "$$venv/bin/python" -m pipelines.drift_eval $(ARGS)

bench:
	venv="$$(runners/venv.sh)" && "$$venv/bin/python" -m bench $(ARGS)
