"""Benchmarks: the recorder against aiortc's MediaRecorder and an ffmpeg composite.

``python -m bench`` runs the one-minute comparison and the memory soak; each benchmark is
also a module of its own (``python -m bench.compare_recorders``, ``bench.memory_soak``).
Results and what they include are recorded in BENCHMARKS.md.
"""
