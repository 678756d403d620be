"""The CLI's plain-text tables: every column starts at the same offset on every line."""

import io

from fedhub.server_ext.cli_table import print_table


def test_columns_line_up_and_trailing_space_is_cut():
    out = io.StringIO()
    print_table([["ID", "STATE", "NOTE"], ["job-1", "running", ""], ["j2", "ok", 3]], out)
    lines = out.getvalue().splitlines()
    assert lines == ["ID     STATE    NOTE", "job-1  running", "j2     ok       3"]
    assert all(line == line.rstrip() for line in lines)
