"""No function in src/ runs over 100 lines unless it says why (`long-function:` above its `fn`)."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import long_functions  # noqa: E402


def test_no_function_in_src_is_over_100_lines_without_a_reason():
    long = [f for f in long_functions.functions(ROOT / "src") if f.length > 100 and f.reason is None]
    assert long == [], "\n".join(f"{f.path.relative_to(ROOT)}:{f.line} {f.name}: {f.length} lines" for f in long)


def _body(n: int, indent: str = "    ") -> str:
    return "".join(f"{indent}let x{i} = {i};\n" for i in range(n))


def test_the_checker_measures_functions_and_reads_the_reason(tmp_path):
    # 1 line for `fn`, n body lines, 1 for the closing brace.
    (tmp_path / "a.rs").write_text(
        "pub fn short() {\n" + _body(98) + "}\n\n"
        "fn long_one() {\n" + _body(99) + "}\n\n"
        "// long-function: a table of every case, one per line\n"
        "#[allow(clippy::too_many_lines)]\n"
        "fn excused() {\n" + _body(120) + "}\n\n"
        "fn one_line() -> u32 { 1 }\n"
        "/// long-function: the first doc line may give the reason too\n"
        "/// More docs.\n"
        "pub(crate) async fn documented(\n    a: u32,\n) -> u32 {\n" + _body(120) + "    a\n}\n"
    )
    (tmp_path / "b.rs").write_text(textwrap.dedent("""
        trait T {
            fn declared(&self);
        }
        impl X {
            pub fn method(&self) -> u32 {
                1
            }
        }
    """))
    found = {f.name: f for f in long_functions.functions(tmp_path)}
    assert found["short"].length == 100
    assert found["long_one"].length == 101 and found["long_one"].reason is None
    assert found["excused"].reason == "a table of every case, one per line"
    assert found["one_line"].length == 1
    assert found["documented"].reason.startswith("the first doc line")
    assert found["documented"].length == 3 + 120 + 2
    assert found["method"].length == 3
    assert "declared" not in found
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "long_functions.py"), str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "long_one" in run.stdout and "excused" not in run.stdout
    assert "1 function(s) over 100 lines" in run.stderr
