"""Fuzzing the parsers of what users hand xtstream: labels CSVs (xView3, classification), dataset
specs, training configs, shard manifests and xView3 prediction CSVs (hypothesis, seeded).

Each example is a valid file mutated — bytes cut, inserted or duplicated, a value replaced by an
odd one (``nan``, ``-1``, ``1e400``, a list, unicode), a key dropped — and parsed the way the
commands parse it. It must parse, or raise an ``XTStreamError`` naming the file
(``clear_error``); anything else (a ``KeyError``, a ``TypeError``…) is an ``unclear_error``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from _fault_runner import Case

ODD = ["nan", "NaN", "inf", "-inf", "-1", "0", "1e400", "-0", "", " ", "true", "null", "[]", "{}", "é", "\x00",
       "9" * 40, "1,2", '"', "'", "\\", "..", "../x", "%s", "\n"]
JSON_ODD = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                        | st.text(max_size=8) | st.sampled_from(ODD),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                        max_leaves=6)


@st.composite
def text_mutation(draw: Any, text: str) -> str:
    """``text`` with 1-3 edits: a slice cut, odd text inserted, a line duplicated or dropped, a
    field replaced by an odd value."""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cut", "insert", "dup_line", "drop_line", "field"]))
        n = len(text)
        if kind == "cut" and n:
            a = draw(st.integers(0, n - 1))
            text = text[:a] + text[a + draw(st.integers(1, max(1, min(40, n - a)))):]
        elif kind == "insert":
            a = draw(st.integers(0, n))
            text = text[:a] + draw(st.sampled_from(ODD) | st.text(max_size=6)) + text[a:]
        elif kind in ("dup_line", "drop_line"):
            lines = text.splitlines(keepends=True)
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                lines[i:i + 1] = [lines[i]] * (2 if kind == "dup_line" else 0)
                text = "".join(lines)
        else:
            seps = [i for i, ch in enumerate(text) if ch in ",:\n"]
            if len(seps) >= 2:
                i = draw(st.integers(0, len(seps) - 2))
                text = text[:seps[i] + 1] + draw(st.sampled_from(ODD)) + text[seps[i + 1]:]
    return text


@st.composite
def doc_mutation(draw: Any, doc: Any) -> Any:
    """``doc`` (a parsed YAML/JSON document) with one value replaced by an odd one or one key
    dropped, at a random depth."""
    doc = json.loads(json.dumps(doc))
    node, path = doc, []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node, key=str) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        node = node[key]
    if not path:
        return draw(JSON_ODD)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON_ODD)
    return doc


def _judge(parse: Callable[[Path], Any], path: Path) -> tuple[str, str]:
    from xtstream.errors import XTStreamError

    try:
        parse(path)
        return "ok", ""
    except XTStreamError as err:
        text = str(err)
        if str(path) in text or path.name in text:
            return "clear_error", text[:200]
        return "unclear_error", f"error does not name {path.name}: {text[:200]}"
    except RecursionError as err:
        return "unclear_error", f"RecursionError: {err}"[:300]
    except Exception as err:  # noqa: BLE001 - what we are looking for
        return "unclear_error", f"{type(err).__name__}: {err}"[:300]


def fuzz(name: str, valid: str, parse: Callable[[Path], Any], *, filename: str, structured: str | None = None,
         examples: int = 100, seed: int = 0, workdir: Path) -> list[Case]:
    """Parse ``examples`` mutations of ``valid`` with ``parse``; one :class:`Case` each.
    ``structured`` (``"json"``/``"yaml"``; ``"manifest"``: JSON whose checksum is made to match, so
    that the checks behind it are what is fuzzed): half the mutations edit the parsed document."""
    cases: list[Case] = []
    loads = {"json": json.loads, "yaml": yaml.safe_load, "manifest": json.loads}.get(structured or "")
    dumps = {"json": lambda d: json.dumps(d, indent=1), "yaml": yaml.safe_dump, "manifest": _sealed}.get(structured or "")
    strategy = text_mutation(valid)
    if loads is not None:
        strategy = st.one_of(strategy, doc_mutation(loads(valid)).map(lambda d: dumps(d)))

    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(text: str) -> None:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            path = Path(tmp) / filename
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            outcome, note = _judge(parse, path)
        cases.append(Case(f"fuzzed {name}", f"mutation #{len(cases)}", outcome, note,
                          [] if outcome in ("ok", "clear_error") else [{"input": text[:2000]}]))

    one()
    return cases[:examples]


# -- the parsers, as the commands call them ------------------------------------------------------------

def parsers(ws: Any) -> dict[str, tuple[str, Callable[[Path], Any], str, str | None]]:
    """``{name: (valid text, parse, file name, structured)}`` over the workspace's files."""
    from xtstream.data.shards.reader import load_manifest
    from xtstream.data.specs import load_spec, shipped_specs
    from xtstream.engine.config import load_train_config
    from xtstream.tasks import get_task
    from xtstream.tasks.xview3.labels import read_labels
    from xtstream.tasks.xview3.metric import read_predictions

    shape = {"scene": (192, 256)}

    def manifest(path: Path) -> Any:
        return load_manifest(path)

    return {
        "labels CSV (xView3)": (ws.labels.read_text(), lambda p: read_labels(p, scene_ids=["scene"], shapes=shape),
                                "labels.csv", None),
        "labels CSV (classification)": ("scene_id,label\nscene,1\nother,0\n",
                                        lambda p: get_task("classification").read_labels(p, scene_ids=["scene"]),
                                        "labels.csv", None),
        "dataset spec": (shipped_specs()["xview3"].read_text(), load_spec, "spec.yaml", "yaml"),
        "training config": (ws.config(ws.root / "fuzz_run").read_text(), load_train_config, "config.yaml", "yaml"),
        "shard manifest": ((ws.shards / "manifest.json").read_text(), manifest, "manifest.json", "manifest"),
        "predictions CSV (xView3)": (_PREDICTIONS, read_predictions, "detections.csv", None),
    }


def _sealed(doc: Any) -> str:
    """A manifest document as written, its checksum matching whatever it now holds."""
    from xtstream.data.shards.format import manifest_text

    if not isinstance(doc, dict):
        return json.dumps(doc)
    return manifest_text({k: v for k, v in doc.items() if k != "crc32c"})


_PREDICTIONS = ("scene_id,detect_scene_row,detect_scene_column,is_vessel,is_fishing,vessel_length_m\n"
                "scene,10.5,20.25,True,False,31.0\nscene,100,7,False,False,12.5\n")
