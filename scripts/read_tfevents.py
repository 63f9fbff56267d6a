#!/usr/bin/env python3
"""Reads a run folder's TensorBoard event files with the tensorboard package's own readers.

Prints JSON: {"files": [names], "records": n, "raw": [[file, tag, step, value], ...],
"scalars": {tag: [[step, value], ...]}}. "raw" comes from tensorboard's TFRecord reader
(PyRecordReader_New, which checks both masked CRC-32Cs of every record and raises on a
mismatch) and its Event protobuf; "scalars" from EventAccumulator, the loader behind
`tensorboard --logdir` (it drops older events at a resumed run's SessionLog START).
Exits 1 with the reader's message when a file is damaged.
"""
import glob
import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow


def read_raw(path):
    reader = pywrap_tensorflow.PyRecordReader_New(path)
    events = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return events
        events.append(event_pb2.Event.FromString(reader.record()))


def main():
    run_dir = sys.argv[1]
    files = sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*")))
    raw, records = [], 0
    for index, path in enumerate(files):
        try:
            events = read_raw(path)
        except errors.DataLossError as e:
            print(f"{path}: {e.message}", file=sys.stderr)
            sys.exit(1)
        if not events or events[0].file_version != "brain.Event:2":
            print(f"{path}: the first event is not file_version brain.Event:2", file=sys.stderr)
            sys.exit(1)
        records += len(events)
        for event in events:
            for value in event.summary.value:
                raw.append([index, value.tag, event.step, value.simple_value])
    accumulator = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    scalars = {tag: [[e.step, e.value] for e in accumulator.Scalars(tag)]
               for tag in accumulator.Tags()[event_accumulator.SCALARS]}
    json.dump({"files": [os.path.basename(f) for f in files], "records": records, "raw": raw, "scalars": scalars},
              sys.stdout)


if __name__ == "__main__":
    main()
