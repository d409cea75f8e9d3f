"""`write_json`: the one JSON writer, byte for byte what each file had before."""

from __future__ import annotations

from mcir_cli._helpers.fsutil import write_json

DATA = {"z": 1, "a": [1.5, None, True], "name": "Set14 λ", "nested": {"b": {}, "a": []}}


def test_default_is_indent_2_keys_in_order_ascii_and_one_newline(tmp_path):
    path = write_json(tmp_path / "out" / "r.json", DATA)
    text = path.read_text(encoding="utf-8")
    assert path == tmp_path / "out" / "r.json"
    assert text == ('{\n  "z": 1,\n  "a": [\n    1.5,\n    null,\n    true\n  ],\n  "name": "Set14 \\u03bb",\n'
                    '  "nested": {\n    "b": {},\n    "a": []\n  }\n}\n')
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left


def test_indent_1_and_4_without_ascii_escapes(tmp_path):
    assert write_json(tmp_path / "d.json", {"k": [1]}, indent=1).read_text() == '{\n "k": [\n  1\n ]\n}\n'
    text = write_json(tmp_path / "o.json", {"name": "λ"}, indent=4, ensure_ascii=False).read_text(encoding="utf-8")
    assert text == '{\n    "name": "λ"\n}\n'
