"""The append-only msgpack event log: framing, record schema, writer and reader."""
from .framing import MAGIC, frame
from .reader import (Damage, Entry, first_record, last_record, merge, open_logs, read_file,
                     read_files, rotated_set)
from .schema import UPCASTERS, VERSION, SchemaError, upcast
from .writer import Counters, Degradation, FileOps, Writer

__all__ = ["MAGIC", "frame", "Damage", "Entry", "first_record", "last_record", "merge",
           "open_logs", "read_file", "read_files", "rotated_set", "UPCASTERS", "VERSION",
           "SchemaError", "upcast", "Counters", "Degradation", "FileOps", "Writer"]
