"""The errors of the template library, each with a stable ``code`` and the HTTP status it maps to."""

from __future__ import annotations

from leadline.templates.definitions import Problem


class TemplateError(Exception):
    """Base of every template error; ``code`` is stable, ``message`` is for people."""

    code = "template_error"
    http_status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TemplateNotFound(TemplateError):
    code = "template_not_found"
    http_status = 404


class TemplateNotApproved(TemplateError):
    """The template exists but may not be sent on the chosen channel (not submitted, pending, rejected...)."""

    code = "template_not_approved"
    http_status = 409

    def __init__(self, message: str, *, channel: str, status: str):
        super().__init__(message)
        self.channel = channel
        self.status = status


class InvalidTemplateVariables(TemplateError):
    code = "invalid_template_variables"
    http_status = 422

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


class InvalidTemplate(TemplateError):
    """A definition breaks WhatsApp's rules or is malformed; ``problems`` lists every one."""

    code = "invalid_template"
    http_status = 422

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems
