"""`nixdist check`: is remote building set up? One module per part, the pure ones first:

- `verdicts`: the findings and the report as values, and the verdicts on builders (pure);
  its docstring lists what is checked and how.
- `local`: the verdicts on this host (pure).
- `ssh`: ssh's errors in words, OpenSSH's key fingerprints (pure).
- `observe`: the I/O: talks to each builder over a fresh ssh master, reads this host's settings.
- `command`: the click command, which renders the report.

What builders are asked, and the parsers of their answers: `nixdist.transport.check_script`
(run by `nixdist.transport.remote_script`, as the load probe is).

Only `command` imports click, and nothing is imported here: the verdicts stay click-free for
other callers, and `nixdist.cli`'s lazy table names `nixdist.cli.check.command:check`.
"""
