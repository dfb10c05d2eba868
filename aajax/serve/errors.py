"""HTTP errors in the OpenAI error format: {"error": {"message", "type", "param", "code"}}.

`ApiError` carries the status and the machine-readable code; every handler raises it (or an
`aajax.errors.AajaxError`, which maps to 400), and the app turns it into a JSON body. Nothing a
client sends may reach the generic 500 path.
"""
from typing import Optional


class ApiError(Exception):
  def __init__(self, status: int, message: str, code: Optional[str] = None, param: Optional[str] = None,
               type: Optional[str] = None, headers: Optional[dict] = None):
    super().__init__(message)
    self.status, self.message, self.code, self.param = status, message, code, param
    self.type = type or error_type(status)
    self.headers = headers or {}

  def body(self) -> dict:
    return error_body(self.message, self.type, self.code, self.param)


def error_type(status: int) -> str:
  if status == 401:
    return "authentication_error"
  if status == 404:
    return "not_found_error"
  if status == 429:
    return "rate_limit_error"
  if status == 504:
    return "timeout_error"
  if status >= 500:
    return "server_error"
  return "invalid_request_error"


def error_body(message: str, type: str = "invalid_request_error", code: Optional[str] = None,
               param: Optional[str] = None) -> dict:
  return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, code: str = "invalid_request", param: Optional[str] = None) -> ApiError:
  return ApiError(400, message, code, param)


def too_large(message: str, code: str = "too_large", param: Optional[str] = None) -> ApiError:
  return ApiError(413, message, code, param)
