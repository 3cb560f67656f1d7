"""protoc-gen-event: the modules it writes from a .proto of 2 services x 3 rpcs, checked by mypy --strict,
registered on a pool, and described by event asyncapi (valid AsyncAPI 3.0, every operation with its schema).

The modules are generated at test time (tests/protoc_support.py); nothing generated is checked in.
"""

from __future__ import annotations

import json
import keyword
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protoc_support import PROTOS, ROOT, generate, importable

from event import ConfigurationError, Message, WorkerPool, asyncapi, cli
from event.protoc_plugin import ROUTING_KEY_OPTION

TYPING = ROOT / "tests" / "typing"
SPEC = ROOT / "tests" / "asyncapi_spec" / "asyncapi-3.0.0.schema.json"
OPERATIONS = {
    "eventtest.shop.Users.Create",
    "eventtest.shop.Users.Get",
    "eventtest.users.forgotten",  # the rpc's routing key option
    "eventtest.shop.Billing.Charge",
    "eventtest.shop.Billing.Refund",
    "eventtest.shop.Billing.Quote",
}


# protoc's own --pyi_out stubs are not --strict clean (a bare Mapping, a ClassVar at module level): their
# errors are protoc's, silenced as docs/protobuf-services.md tells users to; the _event modules are checked.
MYPY_CONFIG = """
[mypy]
strict = true
[mypy-eventtest.shop_services_pb2,eventtest.event_options_pb2]
ignore_errors = true
"""


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of this module's two mypy runs, new each run (as tests/unit/test_typing.py's): the second
    reads `event`, protobuf's stubs and the standard library's from it instead of checking them again."""
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(*targets: str, path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    # From this tree's root, so that mypy reads its `event` rather than the one the venv installed.
    config = Path(str(path).split(os.pathsep)[0]).parent / "mypy.ini"
    config.write_text(MYPY_CONFIG)
    env = {**os.environ, "MYPYPATH": str(path)}
    command = [
        sys.executable, "-m", "mypy", f"--config-file={config}", "--strict", f"--cache-dir={cache}",
        "--show-error-codes", *targets,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)


def test_the_plugin_writes_one_module_per_proto_with_services_beside_protocs(tmp_path: Path) -> None:
    generate(tmp_path / "out")
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.py"))
    assert written == [
        "eventtest/event_options_pb2.py",  # no service: no _event module
        "eventtest/shop_services_event.py",
        "eventtest/shop_services_pb2.py",
    ]
    text = (tmp_path / "out" / "eventtest" / "shop_services_event.py").read_text()
    assert "DO NOT EDIT" in text and "from eventtest import shop_services_pb2" in text
    assert str(ROUTING_KEY_OPTION) in (PROTOS / "eventtest" / "event_options.proto").read_text()


def test_a_streaming_rpc_is_refused_with_the_rpc_named(tmp_path: Path) -> None:
    proto = tmp_path / "streams.proto"
    proto.write_text(
        'syntax = "proto3";\npackage s;\nmessage M {}\nservice S { rpc Watch(M) returns (stream M); }\n'
    )
    from protoc_support import plugin_script

    command = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}",
        f"--plugin=protoc-gen-event={plugin_script(tmp_path)}", f"--event_out={tmp_path}", str(proto),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode != 0
    assert "rpc s.S.Watch streams" in done.stderr


def test_mypy_strict_accepts_the_generated_modules_and_their_correct_use(mypy_cache: Path) -> None:
    out = importable()
    result = _mypy(
        "-m", "eventtest.shop_services_event", "-m", "typed_services",
        path=Path(f"{out}{os.pathsep}{TYPING}"), cache=mypy_cache,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_rejects_each_wrong_use_with_its_error_code(mypy_cache: Path) -> None:
    # Each line marked "# E: code" must be rejected with that code, and no other line at all.
    wrong = TYPING / "typed_services_wrong.py"
    expected = {
        (number, line.rsplit("# E: ", 1)[1].strip())
        for number, line in enumerate(wrong.read_text().splitlines(), start=1)
        if "  # E: " in line
    }
    result = _mypy(
        "-m", "typed_services_wrong", path=Path(f"{importable()}{os.pathsep}{TYPING}"), cache=mypy_cache
    )
    found = set(re.findall(r"typed_services_wrong\.py:(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.M))
    assert {(int(n), code) for n, code in found} == expected, result.stdout
    assert ("arg-type" in {code for _, code in expected}) and len(expected) >= 10


class Servicer:
    """Serves both services (their rpcs' names differ)."""

    async def Create(self, ctx: Any, msg: Message[Any]) -> None: ...
    async def Get(self, ctx: Any, msg: Message[Any]) -> Any: ...
    async def Forget(self, ctx: Any, msg: Message[Any]) -> None: ...
    async def Charge(self, ctx: Any, msg: Message[Any]) -> None: ...
    async def Refund(self, ctx: Any, msg: Message[Any]) -> None: ...
    async def Quote(self, ctx: Any, msg: Message[Any]) -> Any: ...


def a_pool() -> tuple[WorkerPool, Any]:
    importable()
    import eventtest.shop_services_event as services

    pool = WorkerPool(namespace="shop")
    services.register_users(pool, Servicer(), max_concurrency=4, methods={"Get": {"max_concurrency": 1}})
    services.register_billing(pool, Servicer(), queue=None, methods={"Quote": {"prefetch": 3}})
    return pool, services


def test_registration_binds_one_consumer_per_rpc_with_per_method_options() -> None:
    pool, _ = a_pool()
    consumers = {c.queue: c for c in pool.consumers}
    assert {c.routing_keys[0] for c in pool.consumers} == OPERATIONS
    assert consumers["shop:eventtest:shop:users:get"].max_concurrency == 1
    assert consumers["shop:eventtest:shop:users:create"].max_concurrency == 4
    assert consumers["shop:eventtest:shop:billing:quote"].prefetch == 3
    assert consumers["shop:eventtest:shop:users:create"].handler.__qualname__ == "Servicer.Create"


def test_registration_refuses_an_unknown_method_and_a_servicer_missing_one() -> None:
    importable()
    import eventtest.shop_services_event as services

    with pytest.raises(ConfigurationError, match=r"methods names \['Gett'\], not rpcs of eventtest"):
        services.register_users(WorkerPool(), Servicer(), methods={"Gett": {}})

    class Partial:
        async def Create(self, ctx: Any, msg: Message[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="has no method Get"):
        services.register_users(WorkerPool(), Partial())  # type: ignore[arg-type]


def test_asyncapi_lists_the_six_operations_with_their_schemas_valid_against_asyncapi_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # event asyncapi app:pool, the app importing the generated module's contracts and registering both.
    (tmp_path / "protobuf_services_app.py").write_text(
        "from eventtest.shop_services_event import *  # the contracts: send operations\n"
        "from test_protoc_plugin import a_pool\n"
        "pool, _ = a_pool()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    importable()
    assert cli.main(["asyncapi", "protobuf_services_app:pool", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    errors = list(jsonschema.Draft7Validator(json.loads(SPEC.read_text())).iter_errors(doc))
    assert not errors, [e.message for e in errors[:5]]
    for action in ("receive", "send"):
        addresses = {
            doc["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
            for op in doc["operations"].values()
            if op["action"] == action
        }
        assert addresses == OPERATIONS, action
    messages = doc["components"]["messages"]
    assert messages["eventtest.shop.GetUser"]["contentType"] == "application/x-protobuf"
    user = doc["components"]["schemas"]["eventtest.shop.QuoteRequest"]
    assert user["properties"]["items"]["items"]["properties"] == {
        "sku": {"type": "string"},
        "quantity": {"type": "integer", "format": "int32"},
    }
    assert {op["summary"] for op in doc["operations"].values() if op["action"] == "send"} >= {
        "Look a user up: called for its answer.",
        "Price a basket: called for its answer.",
    }


def test_document_of_the_contracts_alone(capsys: pytest.CaptureFixture[str]) -> None:
    _, services = a_pool()
    doc = asyncapi.document(None, [*services.USERS.contracts, *services.BILLING.contracts])
    assert len(doc["operations"]) == 6


# --- the generator alone: a CodeGeneratorRequest in, a CodeGeneratorResponse out, no protoc ---------------

NAME = st.from_regex(r"[A-Z][A-Za-z0-9]{0,8}", fullmatch=True) | st.sampled_from(
    ["class", "None", "async", "close", "service", "get_user", "HTTPStatus"]
)
KEY = st.from_regex(r"[a-z][a-z0-9_]{0,6}(\.[a-z][a-z0-9_]{0,6}){0,3}", fullmatch=True)


def _option(key: str) -> bytes:
    """MethodOptions carrying field ROUTING_KEY_OPTION = ``key``, in protobuf's wire format."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    raw = key.encode()
    return varint(ROUTING_KEY_OPTION << 3 | 2) + varint(len(raw)) + raw


def a_request(package: str, services: dict[str, dict[str, tuple[str | None, bool]]]) -> Any:
    """A request for one file ``shop/x.proto`` of ``package``: services -> rpcs -> (key option, answers)."""
    from google.protobuf import descriptor_pb2
    from google.protobuf.compiler import plugin_pb2

    empty = descriptor_pb2.FileDescriptorProto(name="google/protobuf/empty.proto", package="google.protobuf")
    empty.message_type.add(name="Empty")
    file = descriptor_pb2.FileDescriptorProto(
        name="shop/x-y.proto", package=package, dependency=["google/protobuf/empty.proto"]
    )
    outer = file.message_type.add(name="Outer")
    outer.nested_type.add(name="Inner")
    file.message_type.add(name="Answer")
    prefix = f".{package}" if package else ""
    for service_name, rpcs in services.items():
        service = file.service.add(name=service_name)
        for rpc_name, (key, answers) in rpcs.items():
            method = service.method.add(
                name=rpc_name,
                input_type=f"{prefix}.Outer.Inner",
                output_type=f"{prefix}.Answer" if answers else ".google.protobuf.Empty",
            )
            if key is not None:
                method.options.MergeFromString(_option(key))
    return plugin_pb2.CodeGeneratorRequest(file_to_generate=[file.name], proto_file=[empty, file])


@settings(deadline=None)  # the first example imports protobuf's generator modules; a shared machine
@given(
    package=st.sampled_from(["", "shop", "acme.shop.v1"]),
    services=st.dictionaries(
        NAME,
        st.dictionaries(NAME, st.tuples(st.none() | KEY, st.booleans()), min_size=1, max_size=4),
        min_size=1,
        max_size=3,
    ),
)
def test_the_generated_module_parses_and_names_each_rpc_its_routing_key(
    package: str, services: dict[str, dict[str, tuple[str | None, bool]]]
) -> None:
    import ast

    from event.protoc_plugin import generate

    response = generate(a_request(package, services))
    if response.error:  # only for names that clash: rpcs "Get" and "Get_in", "AbCd.X" and "Ab.CdX"
        assert re.search(r"clashes with another's (methods|generated name)", response.error), response.error
        return
    [written] = response.file
    assert written.name == "shop/x_y_event.py"
    tree = ast.parse(written.content)
    contracts = {
        node.targets[0].id: node.value.args[0].value  # type: ignore[attr-defined]
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.value, "func", None) is not None
        and getattr(node.value.func, "id", "") == "Contract"  # type: ignore[attr-defined]
    }  # fmt: skip
    wanted = [
        key or (f"{package}.{service}.{rpc}" if package else f"{service}.{rpc}")
        for service, rpcs in services.items()
        for rpc, (key, _) in rpcs.items()
    ]
    assert sorted(contracts.values()) == sorted(wanted)
    assert (
        "import shop.x_y_pb2" not in written.content
        and "from shop import x_y_pb2 as _shop_x_y_pb2" in written.content
    )
    assert "_shop_x_y_pb2.Outer.Inner" in written.content  # a nested message by its attribute path
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for service, rpcs in services.items():
        producer = {f.name for f in classes[f"{service}Producer"].body if isinstance(f, ast.AsyncFunctionDef)}
        servicer = {f.name for f in classes[f"{service}Servicer"].body if isinstance(f, ast.AsyncFunctionDef)}
        for rpc in rpcs:
            python = f"{rpc}_" if keyword.iskeyword(rpc) or rpc in {"close", "publisher", "service"} else rpc
            assert {python, f"{python}_in", f"{python}_at"} <= producer
            assert python in servicer
            assert f"_services.Rpc({python!r}," in written.content


def test_a_message_of_a_file_protoc_did_not_pass_is_an_error_naming_it() -> None:
    from event.protoc_plugin import generate

    request = a_request("shop", {"Users": {"Get": (None, True)}})
    del request.proto_file[1].message_type[1]  # Answer
    assert (
        generate(request).error == "shop/x-y.proto: message .shop.Answer is not among the files protoc passed"
    )
