"""The tools (`grouplat.tools`): the demo, the evaluation, `grouplat bench` and perf_analyzer support.

They import the method core, training, export, serving and the client; nothing imports them.
"""
