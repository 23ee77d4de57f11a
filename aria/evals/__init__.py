"""`aria eval`: scenario files (scenario.py) played against the real composition (runner.py, stage.py), judged on
invariants and expectations (checks.py), reported and recorded (suite.py, cli.py)."""
