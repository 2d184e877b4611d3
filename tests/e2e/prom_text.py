"""A strict parser for the Prometheus text exposition format 0.0.4: enough to read back the
metrics Spindle exposes (metric generator scrape endpoint, /metrics) exactly."""

import math

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def parse(text):
    """{(name, frozenset(labels.items())): float value}. Comments and blank lines are skipped;
    a timestamp after the value is ignored. Raises ValueError on a malformed line or on the same
    series twice."""
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            name, labels, value = _parse_line(line)
        except (ValueError, IndexError) as e:
            raise ValueError(f"line {number} is not in the text format ({e}): {line!r}") from None
        key = (name, frozenset(labels.items()))
        if key in out:
            raise ValueError(f"line {number}: series exposed twice: {line!r}")
        out[key] = value
    return out


def _parse_line(line):
    i = 0
    while i < len(line) and (line[i].isalnum() or line[i] in "_:"):
        i += 1
    name = line[:i]
    if not name or name[0].isdigit():
        raise ValueError("bad metric name")
    labels = {}
    if i < len(line) and line[i] == "{":
        i += 1
        while True:
            while line[i] in " \t":
                i += 1
            if line[i] == "}":
                i += 1
                break
            start = i
            while line[i].isalnum() or line[i] == "_":
                i += 1
            label = line[start:i]
            if not label or label[0].isdigit():
                raise ValueError("bad label name")
            while line[i] in " \t":
                i += 1
            if line[i] != "=":
                raise ValueError(f"'=' expected after label {label}")
            i += 1
            while line[i] in " \t":
                i += 1
            if line[i] != '"':
                raise ValueError(f"quoted value expected for label {label}")
            i += 1
            value = []
            while line[i] != '"':
                if line[i] == "\\":
                    if line[i + 1] not in _ESCAPES:
                        raise ValueError(f"bad escape \\{line[i + 1]} in label {label}")
                    value.append(_ESCAPES[line[i + 1]])
                    i += 2
                else:
                    value.append(line[i])
                    i += 1
            i += 1
            if label in labels:
                raise ValueError(f"label {label} given twice")
            labels[label] = "".join(value)
            while line[i] in " \t":
                i += 1
            if line[i] == ",":
                i += 1
            elif line[i] != "}":
                raise ValueError("',' or '}' expected")
    fields = line[i:].split()
    if not fields or len(fields) > 2:
        raise ValueError("a value (and optionally a timestamp) expected")
    return name, labels, _number(fields[0])


def _number(text):
    lowered = text.lower()
    if lowered in ("+inf", "inf"):
        return math.inf
    if lowered == "-inf":
        return -math.inf
    return float(text)


def series(parsed, name):
    """[(labels dict, value)] of every series of metric `name`."""
    return [(dict(labels), value) for (n, labels), value in parsed.items() if n == name]


def key(name, **labels):
    """The key `parse` gives the series `name{labels}`."""
    return (name, frozenset(labels.items()))


def show(k):
    """A series key as name{a="b",...}, for messages."""
    name, labels = k
    inner = ",".join(f'{l}="{v}"' for l, v in sorted(labels))
    return f"{name}{{{inner}}}"
