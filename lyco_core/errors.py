"""Errors raised by lyco_core. Every message names the file, and where known the module, the key and what was
expected."""

from __future__ import annotations


class AdapterError(ValueError):
    """An adapter file or folder that cannot be read or applied as asked.

    The message reads ``<file>: module <module>: key <key>: <problem>; expected <expectation>`` with the parts that are
    known; the same parts are kept as attributes for programs.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        module: str | None = None,
        key: str | None = None,
        expected: str | None = None,
    ):
        self.problem, self.file, self.module, self.key, self.expected = problem, file, module, key, expected
        super().__init__(self._compose())

    def _compose(self) -> str:
        parts = []
        if self.file:
            parts.append(str(self.file))
        if self.module:
            parts.append(f"module {self.module}")
        if self.key:
            parts.append(f"key {self.key}")
        text = ": ".join(parts + [self.problem])
        if self.expected:
            text += f"; expected {self.expected}"
        return text

    def located(self, *, file: str | None = None, module: str | None = None) -> "AdapterError":
        """The same error with the file (and module) filled in where they were not known yet."""
        return AdapterError(
            self.problem, file=self.file or file, module=self.module or module, key=self.key, expected=self.expected
        )
