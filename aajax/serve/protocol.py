"""Request and response bodies (OpenAI chat-completions format, plus the region and anomaly routes).

Unknown top-level fields are accepted and ignored, as OpenAI clients send many optional ones.
Extensions to the chat request, which an OpenAI client passes through `extra_body`:
  task            "query" (default; "caption" when the user text is empty), "caption", "detect", "point"
  caption_length  "short" | "normal" | "long"
  max_objects     detect / point cap
"""
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class ImageUrl(BaseModel):
  url: str = Field(description="data:image/(jpeg|png|webp);base64,... or file:///path under the image folder")
  detail: Optional[str] = None


class TextPart(BaseModel):
  type: Literal["text"]
  text: str


class ImagePart(BaseModel):
  type: Literal["image_url"]
  image_url: Union[ImageUrl, str]


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(BaseModel):
  model_config = ConfigDict(extra="allow")
  role: Literal["system", "developer", "user", "assistant", "tool"]
  content: Union[str, list[ContentPart], None] = None


class StreamOptions(BaseModel):
  include_usage: bool = False


class ChatCompletionRequest(BaseModel):
  model_config = ConfigDict(extra="allow")
  model: str
  messages: list[Message] = Field(min_length=1)
  max_tokens: Optional[int] = Field(None, ge=0)
  max_completion_tokens: Optional[int] = Field(None, ge=0)
  temperature: Optional[float] = Field(None, ge=0, le=2)
  top_p: Optional[float] = Field(None, gt=0, le=1)
  stop: Union[str, list[str], None] = None
  seed: Optional[int] = None
  stream: bool = False
  stream_options: Optional[StreamOptions] = None
  logprobs: bool = False
  top_logprobs: Optional[int] = Field(None, ge=0, le=20)
  n: int = Field(1, ge=1)
  task: Optional[Literal["query", "caption", "detect", "point"]] = None
  caption_length: Literal["short", "normal", "long"] = "normal"
  max_objects: Optional[int] = Field(None, ge=0)


class RegionRequest(BaseModel):
  """POST /v1/detect and /v1/point."""
  model: Optional[str] = None
  image_url: Union[ImageUrl, str]
  object: str = Field(min_length=1)
  max_objects: Optional[int] = Field(None, ge=0)


class AnomalyRequest(BaseModel):
  """POST /v1/anomaly."""
  model: Optional[str] = None
  image_url: Union[ImageUrl, str]
  class_name: Optional[str] = Field(None, description="a training class, or any object name (prompt ensemble)")
  threshold: Optional[float] = Field(None, ge=0, le=1)
  heatmap: bool = True


# -- responses (documentation of the schema; handlers build plain dicts) ------------------------------
class Usage(BaseModel):
  prompt_tokens: int
  completion_tokens: int
  total_tokens: int
  prompt_tokens_details: Optional[dict] = None


class ChoiceMessage(BaseModel):
  role: Literal["assistant"] = "assistant"
  content: str


class Choice(BaseModel):
  index: int
  message: ChoiceMessage
  logprobs: Optional[dict] = None
  finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
  id: str
  object: Literal["chat.completion"] = "chat.completion"
  created: int
  model: str
  choices: list[Choice]
  usage: Usage


class Box(BaseModel):
  x_min: float
  y_min: float
  x_max: float
  y_max: float


class Point(BaseModel):
  x: float
  y: float


class DetectResponse(BaseModel):
  model: str
  objects: list[Box]


class PointResponse(BaseModel):
  model: str
  points: list[Point]


class AnomalyResponse(BaseModel):
  model: str
  class_name: str
  image_score: float
  max_pixel_score: float
  anomalous: Optional[bool] = None
  anomalous_pixels: Optional[float] = None
  heatmap_png_base64: Optional[str] = None


class ErrorDetail(BaseModel):
  message: str
  type: str
  param: Optional[str] = None
  code: Optional[str] = None


class ErrorResponse(BaseModel):
  error: ErrorDetail
