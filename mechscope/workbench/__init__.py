"""The UI-free workbench core: frozen requests, the executor, the Workbench controller, the recorder.

Imports neither textual nor torch: it runs on any `EngineProtocol` (in-process, served or remote).
"""
