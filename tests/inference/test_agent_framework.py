"""Issue 12: an agent framework's OpenAI adapter wired as a user would (langchain-openai's
`ChatOpenAI` with `base_url`), against `python -m inference serve` (real engine, tiny random model,
temperature 1): it calls a tool through our server, sends the result back, and gets structured
output as a pydantic object."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.inference.test_api import serving

pytestmark = pytest.mark.slow


class WeatherArgs(BaseModel):
    city: str = Field(max_length=10, description="City name")
    days: int = Field(ge=1, le=7, description="Forecast length in days")


@tool(args_schema=WeatherArgs)
def get_weather(city: str, days: int) -> str:
    """Weather forecast for a city."""
    return f"{city}: sunny for {days} days"


class Deployment(BaseModel):
    region: Literal["westeurope", "swedencentral"]
    replicas: int = Field(ge=1, le=8)
    note: str = Field(max_length=16)


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tiny_model_dir, tmp_path_factory.mktemp("agent"), "--max-model-len", "1024") as url:
        yield url


@pytest.fixture(scope="module")
def llm(server: str) -> ChatOpenAI:
    model = openai.OpenAI(base_url=f"{server}/v1", api_key="unused").models.list().data[0].id
    return ChatOpenAI(base_url=f"{server}/v1", api_key="unused", model=model, temperature=1.0, max_tokens=300,
                      seed=3, max_retries=0, timeout=120)


def test_langchain_calls_a_tool_through_the_server_and_sends_the_result_back(llm: ChatOpenAI) -> None:
    question = HumanMessage("What is the weather in Oslo this week?")
    # "any" is LangChain's name for OpenAI's tool_choice "required".
    reply = llm.bind_tools([get_weather], tool_choice="any").invoke([question])
    assert reply.tool_calls, reply
    call = reply.tool_calls[0]
    assert call["name"] == "get_weather"
    WeatherArgs.model_validate(call["args"])  # grammar-constrained: always valid arguments
    result = get_weather.invoke(call)
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    # The call and its result go back through the chat template; the model answers in text.
    answer = llm.bind_tools([get_weather], tool_choice="none").invoke([question, reply, result])
    assert isinstance(answer.content, str) and not answer.tool_calls


def test_langchain_structured_output_returns_the_pydantic_object(llm: ChatOpenAI) -> None:
    structured = llm.with_structured_output(Deployment, method="json_schema", strict=True)
    for seed in range(3):
        result = structured.invoke("Describe the deployment.", config={"configurable": {}}, seed=seed)
        assert isinstance(result, Deployment)
