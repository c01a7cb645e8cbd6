"""The actor registry: metadata forms, namespaces, duplicates, and load's path checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reflow_microsandbox.registry import ActorRegistry, RegistryError

SEED_SCRIPT = """
@actor
async def process(context):
    large_data = "x" * 10000
    await context.send_output("test", large_data)
    counter = await context.get_state("counter", 0)
    await context.set_state("counter", counter + 1)
    return {"status": "success", "counter": counter}
"""

DICT_FORM = """
@actor({"component": "DataProcessor", "description": "doubles", "inports": ["in"],
        "outports": ["out"], "config": {"factor": 2}})
def process(context):
    return {"out": context.payload["in"] * 2}
"""

KEYWORD_FORM = """
import json

@actor(name="Multiplier", inports=["a", "b"], outports=["product"], state=True)
async def process(context):
    return {"product": context.payload["a"] * context.payload["b"]}
"""

JS_METADATA = """
const metadata = {
  "component": "JsSummer",
  "inports": ["values"],
  "outports": ["sum"],
  "note": "braces { in } strings"
};
async function process(context) { return {sum: 1}; }
module.exports = { metadata, process };
"""

JS_JSDOC = """
/**
 * Says hello.
 * @component Greeter
 */
async function process(context) { return {greeting: "hi"}; }
"""

JS_NAMED_FUNCTION = "function process(context) { return {}; }\n"


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    root = tmp_path / "scripts"
    write(root, "test_actor.py", SEED_SCRIPT)
    write(root, "transform/dict_form.py", DICT_FORM)
    write(root, "math/ops/keyword_form.py", KEYWORD_FORM)
    write(root, "js/summer.js", JS_METADATA)
    write(root, "js/greeter.js", JS_JSDOC)
    write(root, "named_fn.js", JS_NAMED_FUNCTION)
    write(root, "helpers/util.py", "def helper():\n    return 1\n")
    write(root, "notes.txt", "not a script")
    return root


def discovered(scripts: Path, *, allow_inline: bool = False) -> ActorRegistry:
    registry = ActorRegistry([str(scripts)], allow_inline=allow_inline)
    registry.discover()
    return registry


def test_discovery_finds_every_metadata_form_with_folder_namespaces(scripts: Path) -> None:
    registry = discovered(scripts)
    found = {(info.namespace, info.name): info for info in registry.all()}
    assert set(found) == {
        ("default", "test_actor"),
        ("default", "named_fn"),
        ("transform", "DataProcessor"),
        ("math.ops", "Multiplier"),
        ("js", "JsSummer"),
        ("js", "Greeter"),
    }
    assert found[("transform", "DataProcessor")].metadata["config"] == {"factor": 2}
    assert found[("math.ops", "Multiplier")].metadata["inports"] == ["a", "b"]
    assert found[("js", "JsSummer")].metadata["outports"] == ["sum"]
    seed = found[("default", "test_actor")]
    assert seed.source.language == "python"
    assert seed.source.source == SEED_SCRIPT
    assert found[("js", "Greeter")].source.language == "nodejs"
    assert registry.problems == []


def test_list_names_default_actors_plainly_and_others_with_their_namespace(
    scripts: Path,
) -> None:
    assert discovered(scripts).names() == [
        "js.Greeter",
        "js.JsSummer",
        "math.ops.Multiplier",
        "named_fn",
        "test_actor",
        "transform.DataProcessor",
    ]


def test_resolve_by_namespace_by_unique_name_and_by_dotted_name(scripts: Path) -> None:
    registry = discovered(scripts)
    assert registry.resolve("test_actor").name == "test_actor"
    assert registry.resolve("Multiplier", "math.ops").namespace == "math.ops"
    assert registry.resolve("Multiplier").namespace == "math.ops"  # unique name
    assert registry.resolve("Multiplier", "default").namespace == "math.ops"
    assert registry.resolve("math.ops.Multiplier").name == "Multiplier"
    with pytest.raises(RegistryError, match="unknown actor 'nope'"):
        registry.resolve("nope")


def test_same_name_in_two_namespaces_needs_the_namespace(scripts: Path) -> None:
    write(scripts, "other/test_actor.py", SEED_SCRIPT)
    registry = discovered(scripts)
    assert registry.resolve("test_actor").namespace == "default"
    write(scripts, "third/Multiplier.py", KEYWORD_FORM)
    registry = discovered(scripts)
    with pytest.raises(RegistryError, match="several namespaces"):
        registry.resolve("Multiplier")
    assert registry.resolve("Multiplier", "third").path == str(
        (scripts / "third/Multiplier.py").resolve()
    )


def test_two_actors_with_one_name_in_one_namespace_is_an_error_naming_both(
    scripts: Path,
) -> None:
    write(scripts, "transform/copy.py", DICT_FORM)
    with pytest.raises(RegistryError) as caught:
        discovered(scripts)
    message = str(caught.value)
    assert "DataProcessor" in message
    assert "dict_form.py" in message and "copy.py" in message


def test_broken_scripts_are_skipped_with_a_reason(scripts: Path) -> None:
    write(scripts, "broken.py", "@actor\nasync def process(context:\n")
    write(scripts, "wrong_function.py", "@actor\nasync def run(context):\n    return {}\n")
    write(scripts, "bad_meta.js", "const metadata = {component: NAME};\nfunction process(){}\n")
    registry = discovered(scripts)
    assert "broken" not in registry.names()
    assert len(registry.problems) == 3
    problems = "\n".join(registry.problems)
    assert "syntax error at line 2" in problems
    assert "no process function" in problems
    assert "bad_meta.js: `const metadata` must be an object literal of constants" in problems


def test_javascript_metadata_is_read_as_node_reads_an_object_literal(scripts: Path) -> None:
    write(
        scripts,
        "literal.js",
        "// unquoted keys, single quotes, a trailing comma, comments: all JavaScript\n"
        "const metadata = {\n  component: 'literal_js', // its name\n"
        "  inports: ['a', \"b\"],\n  outports: ['out',],\n};\n"
        "module.exports = { process: async (context) => ({}) };\n",
    )
    registry = discovered(scripts)
    info = registry.resolve("literal_js")
    assert info.metadata["inports"] == ["a", "b"] and info.metadata["outports"] == ["out"]
    assert info.source.filename == "literal.js"  # relative to its scripts folder


def test_load_file_registers_a_new_script_inside_a_folder(scripts: Path) -> None:
    registry = discovered(scripts)
    write(scripts, "late/new_actor.py", SEED_SCRIPT.replace("@actor", '@actor(name="Late")'))
    info = registry.load_file("late/new_actor.py")
    assert (info.namespace, info.name) == ("late", "Late")
    assert registry.resolve("Late", "late") == info
    again = registry.load_file(str(scripts / "late/new_actor.py"))  # same file: replaced
    assert again.path == info.path


def test_load_file_refuses_an_actor_name_taken_by_another_file(scripts: Path) -> None:
    registry = discovered(scripts)
    write(scripts, "second_seed.py", '@actor(name="test_actor")\ndef process(c):\n    return {}\n')
    with pytest.raises(RegistryError, match="two actors named 'test_actor'"):
        registry.load_file("second_seed.py")


@pytest.mark.parametrize(
    "file_path",
    ["../../etc/passwd", "../outside.py", "transform/../../outside.py", "/etc/passwd"],
)
def test_load_file_refuses_paths_outside_the_script_folders(scripts: Path, file_path: str) -> None:
    write(scripts.parent, "outside.py", SEED_SCRIPT)
    registry = discovered(scripts)
    with pytest.raises(RegistryError, match="outside the script folders"):
        registry.load_file(file_path)


def test_load_file_refuses_an_absolute_path_outside_even_if_it_is_a_script(
    scripts: Path,
) -> None:
    outside = write(scripts.parent, "elsewhere/actor.py", SEED_SCRIPT)
    registry = discovered(scripts)
    with pytest.raises(RegistryError, match="outside the script folders"):
        registry.load_file(str(outside))


def test_a_symlink_pointing_out_of_the_folder_is_refused(scripts: Path) -> None:
    outside = write(scripts.parent, "secret/actor.py", SEED_SCRIPT.replace("@actor", "@actor()"))
    os.symlink(outside, scripts / "innocent.py")
    os.symlink(outside.parent, scripts / "linked_dir")
    registry = discovered(scripts)
    assert "innocent" not in registry.names()  # discovery skips it too
    for path in ("innocent.py", "linked_dir/actor.py", str(scripts / "innocent.py")):
        with pytest.raises(RegistryError, match="outside the script folders"):
            registry.load_file(path)


def test_load_file_of_a_missing_or_unsupported_file_is_a_clear_error(scripts: Path) -> None:
    registry = discovered(scripts)
    with pytest.raises(RegistryError, match=r"no script 'missing\.py'"):
        registry.load_file("missing.py")
    with pytest.raises(RegistryError, match=r"\.py \(Python\) or \.js"):
        registry.load_file("notes.txt")
    with pytest.raises(RegistryError, match="no process function"):
        registry.load_file("helpers/util.py")


def test_inline_source_is_refused_unless_the_config_allows_it(scripts: Path) -> None:
    registry = discovered(scripts)
    with pytest.raises(RegistryError, match="inline actor source is disabled"):
        registry.load_inline(SEED_SCRIPT, "python", "inline_one")
    assert "inline_one" not in registry.names()


def test_inline_source_is_registered_when_allowed(scripts: Path) -> None:
    registry = discovered(scripts, allow_inline=True)
    info = registry.load_inline(JS_NAMED_FUNCTION, "node", "inline_js", namespace="tmp")
    assert info.source.language == "nodejs"
    assert info.path is None
    assert registry.resolve("inline_js", "tmp") == info
    replaced = registry.load_inline(SEED_SCRIPT, "python", "inline_js", namespace="tmp")
    assert registry.resolve("tmp.inline_js") == replaced
    with pytest.raises(RegistryError, match="two actors named 'test_actor'"):
        registry.load_inline(SEED_SCRIPT, "python", "test_actor")
    with pytest.raises(RegistryError, match="unsupported language 'ruby'"):
        registry.load_inline("puts 1", "ruby", "r")
    with pytest.raises(RegistryError, match="syntax error"):
        registry.load_inline("def process(:\n", "python", "bad")


@pytest.mark.parametrize("alias", ["python", "node", "nodejs", "javascript", "js", "JS"])
def test_inline_languages_accept_the_usual_aliases(scripts: Path, alias: str) -> None:
    registry = discovered(scripts, allow_inline=True)
    source = SEED_SCRIPT if alias == "python" else JS_NAMED_FUNCTION
    expected = "python" if alias == "python" else "nodejs"
    assert registry.load_inline(source, alias, "x").source.language == expected


def test_unload_forgets_an_actor(scripts: Path) -> None:
    registry = discovered(scripts)
    assert registry.unload("test_actor") is True
    assert registry.unload("test_actor") is False
    assert registry.unload("Multiplier", "math.ops") is True
    assert registry.unload("Greeter") is True  # unique name in another namespace
    assert registry.names() == ["js.JsSummer", "named_fn", "transform.DataProcessor"]


def test_metadata_is_read_without_running_the_script(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    root = tmp_path / "scripts"
    write(
        root,
        "sneaky.py",
        f"open({str(marker)!r}, 'w').write('x')\n\n"
        "@actor\ndef process(context):\n    return {}\n",
    )
    registry = discovered(root)
    assert registry.names() == ["sneaky"]
    assert not marker.exists()
