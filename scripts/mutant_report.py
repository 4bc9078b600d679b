"""Print the kill rate of each mutated module after ``mutmut run``; write the survivors to a file.

Run by ``make mutants``. It reads mutmut's results under ``mutants/`` and writes
``mutants-survivors.txt`` at the repository's root: one line per surviving mutant, by module, so
that ``.venv/bin/mutmut show <name>`` prints it.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parent.parent
SURVIVORS = ROOT / "mutants-survivors.txt"


def main() -> int:
    results: dict[str, Counter[str]] = {}
    survivors: list[str] = []
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not exit_codes:
            continue
        module = str(meta.relative_to(ROOT / "mutants")).removesuffix(".meta")
        counts = results.setdefault(module, Counter())
        for name, exit_code in sorted(exit_codes.items()):
            status = status_by_exit_code[exit_code]
            counts[status] += 1
            if status == "survived":
                survivors.append(f"{module}\t{name}")
    if not results:
        print("no mutmut results under mutants/: run `make mutants`", file=sys.stderr)
        return 1
    for module, counts in results.items():
        total = sum(counts.values())
        checked = total - counts["not checked"]
        if not checked:
            print(f"{module}: not run ({total} mutants)")
            continue
        rate = counts["killed"] / checked
        print(
            f"{module}: {counts['killed']} of {checked} mutants killed ({rate:.0%}); {counts['survived']} survived"
            + (f", {counts['not checked']} not checked" if counts["not checked"] else "")
        )
    SURVIVORS.write_text("".join(f"{line}\n" for line in survivors))
    print(f"{len(survivors)} survivors listed in {SURVIVORS.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
