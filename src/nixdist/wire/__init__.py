"""Pure byte codecs: Nix's integer and string framing, NAR and the export stream.

Nothing here does I/O: functions take and return bytes, or are fed bytes.
"""
