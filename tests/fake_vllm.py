"""A local HTTP server that answers vLLM's runtime-LoRA routes as vLLM's OpenAI-compatible server does.

vLLM needs a GPU and its model weights, neither of which the test machines have, so the ``vllm-sync`` tests run
against this server instead: a real HTTP server (Starlette under uvicorn, in a thread, on a real port) whose
handlers check requests the way vLLM's do. Read from vLLM's source (vllm-project/vllm):

* ``vllm/entrypoints/serve/lora/api_router.py``: ``POST /v1/load_lora_adapter`` and ``POST
  /v1/unload_lora_adapter`` exist only when ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` is set (else FastAPI's 404
  ``{"detail": "Not Found"}``); both require a JSON content type; success is 200 with a plain-text message;
* ``vllm/entrypoints/serve/lora/protocol.py``: ``LoadLoRAAdapterRequest`` is ``lora_name: str``, ``lora_path: str``,
  ``load_inplace: bool = False``; ``UnloadLoRAAdapterRequest`` is ``lora_name: str``, ``lora_int_id: int | None``;
  a body that does not validate is a 400 ``BadRequestError``;
* ``vllm/entrypoints/openai/models/serving.py`` (``OpenAIServingModels``): both names required (400
  ``InvalidUserInput``); a name already loaded without ``load_inplace`` is a 400 "has already been loaded"; a
  reload keeps the name's ``lora_int_id``; an adapter the engine cannot find is a 404 ``NotFoundError`` "Loading
  lora NAME failed: No adapter found for PATH" (``vllm/exceptions.py`` ``LoRAAdapterNotFoundError``); unloading an
  unknown name is a 404 ``NotFoundError`` "cannot be found"; ``GET /v1/models`` lists the base model and every
  adapter (``id`` its name, ``root`` its path, ``parent`` the base model); a request's ``model`` that is neither
  is a 404 "The model `NAME` does not exist.";
* ``vllm/entrypoints/openai/engine/protocol.py``: errors are ``{"error": {"message", "type", "param", "code"}}``;
* ``vllm/entrypoints/serve/middleware/authenticate.py``: with ``--api-key``, a ``/v1`` request without
  ``Authorization: Bearer KEY`` is a 401 ``{"error": "Unauthorized"}``.

``legacy=True`` answers as releases before ``load_inplace`` did: the field is ignored (pydantic drops unknown
fields), so reloading a loaded name is always the 400, and errors have the flat shape ``{"object": "error",
"message", "type", "param", "code"}``. The engine's own check that an adapter is loadable is reduced to what
vLLM reads first: a folder holding ``adapter_config.json``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

BASE_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeVllm:
    """``start()`` serves on ``port`` (0: any); ``stop()`` then ``start()`` again is a vLLM restart on the same port,
    which forgets the adapters loaded at run time, as vLLM does."""

    api_key: str | None = None
    runtime_lora_updating: bool = True
    legacy: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    loras: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (lora_int_id, path)
    seen: list[Seen] = field(default_factory=list)
    load_delay_s: float = 0.0
    _ids: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- what vLLM answers ----------------------------------------------------------------------------------

    def _error(self, message: str, err_type: str, status: HTTPStatus) -> JSONResponse:
        info = {"message": message, "type": err_type, "param": None, "code": status.value}
        body = {"object": "error", **info} if self.legacy else {"error": info}
        return JSONResponse(body, status_code=status.value)

    async def _guarded(self, request: Request) -> tuple[Response | None, Any]:
        body: Any = None
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self._lock:
            self.seen.append(Seen(request.method, request.url.path, dict(request.headers), body))
        if self.api_key is not None and request.url.path.startswith("/v1"):
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or token != self.api_key:
                return JSONResponse({"error": "Unauthorized"}, status_code=401), body
        return None, body

    def _validated(self, request: Request, body: Any, fields: dict[str, type]) -> Response | None:
        """validate_json_request, then the pydantic model: a wrong content type or body is a 400."""
        media = request.headers.get("content-type", "").lower().split(";", 1)[0]
        if media != "application/json":
            return self._error(
                "Unsupported Media Type: Only 'application/json' is allowed", "BadRequestError", HTTPStatus.BAD_REQUEST
            )
        if not isinstance(body, dict):
            return self._error(
                "Input should be a valid dictionary or object", "BadRequestError", HTTPStatus.BAD_REQUEST
            )
        for name, kind in fields.items():
            if name not in body:
                return self._error(f"body.{name}: Field required", "BadRequestError", HTTPStatus.BAD_REQUEST)
            if not isinstance(body[name], kind):
                return self._error(
                    f"body.{name}: Input should be a valid string", "BadRequestError", HTTPStatus.BAD_REQUEST
                )
        return None

    async def load(self, request: Request) -> Response:
        refused, body = await self._guarded(request)
        if refused is not None:
            return refused
        if not self.runtime_lora_updating:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        invalid = self._validated(request, body, {"lora_name": str, "lora_path": str})
        if invalid is not None:
            return invalid
        name, path = body["lora_name"], body["lora_path"]
        inplace = bool(body.get("load_inplace", False)) and not self.legacy
        if not name or not path:
            return self._error(
                "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", HTTPStatus.BAD_REQUEST
            )
        with self._lock:
            if not inplace and name in self.loras:
                hint = "" if self.legacy else " If you want to load the adapter in place, set 'load_inplace' to True."
                return self._error(
                    f"The lora adapter '{name}' has already been loaded.{hint}",
                    "InvalidUserInput",
                    HTTPStatus.BAD_REQUEST,
                )
        if not (Path(path) / "adapter_config.json").is_file():
            status = HTTPStatus.BAD_REQUEST if self.legacy else HTTPStatus.NOT_FOUND
            err_type = "BadRequestError" if self.legacy else "NotFoundError"
            return self._error(f"Loading lora {name} failed: No adapter found for {path}", err_type, status)
        if self.load_delay_s:
            await asyncio.sleep(self.load_delay_s)
        with self._lock:
            if name in self.loras:
                lora_id = self.loras[name][0]
            else:
                self._ids += 1
                lora_id = self._ids
            self.loras[name] = (lora_id, path)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, request: Request) -> Response:
        refused, body = await self._guarded(request)
        if refused is not None:
            return refused
        if not self.runtime_lora_updating:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        invalid = self._validated(request, body, {"lora_name": str})
        if invalid is not None:
            return invalid
        name = body["lora_name"]
        if not name:
            return self._error(
                "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput", HTTPStatus.BAD_REQUEST
            )
        with self._lock:
            if name not in self.loras:
                return self._error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", HTTPStatus.NOT_FOUND)
            del self.loras[name]
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def models(self, request: Request) -> Response:
        refused, _ = await self._guarded(request)
        if refused is not None:
            return refused
        now = int(time.time())
        cards = [
            {
                "id": BASE_MODEL,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": BASE_MODEL,
                "parent": None,
                "max_model_len": 32768,
                "permission": [],
            }
        ]
        with self._lock:
            for name, (_, path) in self.loras.items():
                cards.append(
                    {
                        "id": name,
                        "object": "model",
                        "created": now,
                        "owned_by": "vllm",
                        "root": path,
                        "parent": BASE_MODEL,
                        "max_model_len": None,
                        "permission": [],
                    }
                )
        return JSONResponse({"object": "list", "data": cards})

    async def chat(self, request: Request) -> Response:
        """Which adapter a client's ``model`` selects: its path comes back as the answer's content."""
        refused, body = await self._guarded(request)
        if refused is not None:
            return refused
        model = body.get("model") if isinstance(body, dict) else None
        with self._lock:
            found = self.loras.get(model) if model else None
        if model and model != BASE_MODEL and found is None:
            return self._error(f"The model `{model}` does not exist.", "NotFoundError", HTTPStatus.NOT_FOUND)
        content = found[1] if found else BASE_MODEL
        return JSONResponse(
            {
                "object": "chat.completion",
                "model": model or BASE_MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            }
        )

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    # --- the server ----------------------------------------------------------------------------------------

    def app(self) -> Starlette:
        routes = [
            Route("/v1/load_lora_adapter", self.load, methods=["POST"]),
            Route("/v1/unload_lora_adapter", self.unload, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
        ]
        return Starlette(routes=routes, exception_handlers={404: self.not_found})

    def start(self) -> FakeVllm:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(64)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app(), lifespan="off", log_config=None, access_log=False, loop="asyncio")
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fake-vllm", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake vLLM server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Down, as a crashed or restarting vLLM: connections refused, runtime adapters forgotten."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
        with self._lock:
            self.loras.clear()

    def served_path(self, name: str) -> str | None:
        with self._lock:
            found = self.loras.get(name)
        return found[1] if found else None

    def requests_to(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]
