# The two commands of the README. Both install whatever is missing first.
.PHONY: run test install lint check

run:  ## install everything, then run Loopline with embedded defaults (SQLite, worker, scheduler, demo data)
	@scripts/bootstrap.sh
	@.venv/bin/python -m loopline run

test:  ## install everything (incl. Debian's chromium for UI tests), then run the whole test suite
	@scripts/bootstrap.sh --browser
	@scripts/test.sh

install:
	@scripts/bootstrap.sh

lint:
	@.venv/bin/ruff check src tests bench
	@.venv/bin/ruff format --check src tests bench
