"""How attribute probabilities are written out: one Writer class per output format, all of them in FORMATS.

A record is one face: its file, its number in the photo when every face is reported, and a probability per
attribute. A new format is one Writer subclass added to FORMATS; the CLI's --format choices are FORMATS' keys.
"""

import csv
import json
from collections.abc import Sequence
from typing import TextIO


class Writer:
    """Writes records to `out` as they come (write), then whatever needs all of them (finish).

    threshold: the probability from which an attribute is present; only_positive: keep only those attributes;
    faces: a face number goes with every record (columns are fixed by the first record, so this is said upfront).
    """

    every_attribute = False  # a column for every attribute: only_positive cannot drop any

    def __init__(
        self, out: TextIO, names: list[str], *, threshold: float = 0.5, only_positive: bool = False, faces: bool = False
    ):
        self.out, self.names = out, names
        self.threshold, self.only_positive, self.faces = threshold, only_positive, faces

    def write(self, file: str, face: int | None, probs: Sequence[float]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once, after the last record."""

    @staticmethod
    def name_list(names: list[str]) -> str:
        """The attribute names alone (`jmvae attributes`): one per line unless the format says otherwise."""
        return "\n".join(names)

    def kept(self, probs: Sequence[float]) -> list[tuple[str, float]]:
        return [(n, p) for n, p in zip(self.names, probs) if not self.only_positive or p >= self.threshold]

    def record(self, file: str, face: int | None, probs: Sequence[float]) -> dict:
        rec = {"file": file}
        if face is not None:
            rec["face"] = face
        rec["attributes"] = {n: round(float(p), 4) for n, p in self.kept(probs)}
        return rec


class Table(Writer):
    """A rich table per face, for people."""

    def __init__(self, out: TextIO, names: list[str], **options):
        from rich.console import Console

        super().__init__(out, names, **options)
        self.console = Console(file=out, highlight=False)

    def write(self, file, face, probs):
        from rich.markup import escape
        from rich.table import Table

        title = file if face is None else f"{file} (face {face})"
        table = Table("attribute", "probability", "present", title=escape(title), title_justify="left")
        for n, p in self.kept(probs):
            table.add_row(n, f"{p:.3f}", "[green]yes[/]" if p >= self.threshold else "[dim]no[/]")
        self.console.print(table)


class Json(Writer):
    """One JSON list of every record, written at the end."""

    def __init__(self, out: TextIO, names: list[str], **options):
        super().__init__(out, names, **options)
        self.records = []

    def write(self, file, face, probs):
        self.records.append(self.record(file, face, probs))

    def finish(self):
        self.out.write(json.dumps(self.records, indent=2) + "\n")

    @staticmethod
    def name_list(names):
        return json.dumps(names)


class JsonLines(Writer):
    """One JSON object per line, written as each face is done."""

    def write(self, file, face, probs):
        self.out.write(json.dumps(self.record(file, face, probs)) + "\n")

    @staticmethod
    def name_list(names):
        return "\n".join(json.dumps(n) for n in names)


class Csv(Writer):
    """A header row, then one row per face with every attribute's probability."""

    every_attribute = True
    delimiter = ","

    def __init__(self, out: TextIO, names: list[str], **options):
        super().__init__(out, names, **options)
        self.writer = csv.writer(out, delimiter=self.delimiter, lineterminator="\n")
        self.header = ["file"] + (["face"] if self.faces else []) + names  # written with the first row

    def write(self, file, face, probs):
        if self.header:
            self.writer.writerow(self.header)
            self.header = None
        self.writer.writerow([file] + ([face] if self.faces else []) + [f"{float(p):.4f}" for p in probs])


class Tsv(Csv):
    delimiter = "\t"


FORMATS: dict[str, type[Writer]] = {"table": Table, "json": Json, "jsonl": JsonLines, "csv": Csv, "tsv": Tsv}
