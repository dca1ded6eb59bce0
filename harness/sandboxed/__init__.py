"""The participant's side of the trust boundary.

Every module in this package runs inside a run's sandbox, in a process that has imported
participant code. Nothing computed here is believed by the harness: these processes only train
the entry on batches the supervisor hands them and answer `log_probs` requests for inputs the
supervisor chooses. Scores, clock readings, phases, verdicts and counts are the supervisor's
(`harness.supervisor`, `harness.scoring`, `harness.protocol`), computed in the parent from data
it checks itself.

Rule (tested in tests/test_layout.py): modules here import only `harness.contract` and each
other, never the trusted modules, and the trusted modules never import anything from here.
"""
