"""Transports: the only code that starts processes. They move bytes and know no protocol.

`child.Channel` is a child process whose stdin and stdout carry a protocol (a local
``nix-store --serve --write``, or ``ssh … nix-store --serve --write``); `openssh` builds the
ssh command lines Nix would run and keeps one control master per builder alive across hook
processes.
"""
