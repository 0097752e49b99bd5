"""The HTTP API's request and response bodies, as pydantic models (they also make the OpenAPI docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PIXELS = 28 * 28  # an MNIST image, row-major
# Requests take numbers only: strict types refuse "12", true and null where a number belongs, and
# allow_inf_nan refuses NaN and Infinity (which pydantic would otherwise parse).
PixelValue = Annotated[float, Field(ge=0, le=255, strict=True, allow_inf_nan=False)]
Digit = Annotated[int, Field(ge=0, le=9)]
StrictDigit = Annotated[int, Field(ge=0, le=9, strict=True)]  # 7, never "7", 7.0 or true


class ImageInput(BaseModel):
    """One image: an image file in base64, or 784 pixels already in MNIST's format."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image_base64: str | None = Field(
        default=None,
        description="An image file (PNG, JPEG, GIF, BMP, WebP, TIFF) in base64; a `data:` URL works too. "
        "It goes through the same preprocessing as an upload: dark-on-light or light-on-dark, any size.",
    )
    pixels: list[PixelValue] | None = Field(
        default=None,
        min_length=PIXELS,
        max_length=PIXELS,
        description="784 values 0-255, row by row: a 28x28 image in MNIST's format, white (255) ink on "
        "black (0), digit centred. Given to the model as it is, without preprocessing.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageInput:
        if (self.image_base64 is None) == (self.pixels is None):
            raise ValueError("give exactly one of `image_base64` and `pixels`")
        return self


class PredictRequest(BaseModel):
    """A batch of images to recognize (a single image is a batch of one)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: list[ImageInput] = Field(min_length=1, description="The images, answered in the same order.")


class Prediction(BaseModel):
    digit: Digit | None = Field(description="The most probable digit; null when the image holds no digit.")
    confidence: float = Field(ge=0, le=1, description="Its probability (0 without a digit).")
    uncertain: bool = Field(description="The confidence is below the model's threshold: a guess.")
    probabilities: list[float] = Field(
        default_factory=list, description="Probability of each digit 0-9 (empty without a digit)."
    )
    image: list[int] | None = Field(
        default=None,
        description="The 28x28 input the model saw, 784 values 0-255 row by row, white ink on black. "
        "Send it back with a label to /api/feedback if the answer was wrong.",
    )
    error: str | None = Field(default=None, description='Why there is no digit, e.g. "no digit found".')
    note: str | None = Field(default=None, description="A caveat, e.g. that the image holds several digits.")


class PredictResponse(BaseModel):
    model: str = Field(description="The name of the model that answered.")
    predictions: list[Prediction] = Field(description="One per input, in the order given.")


class NumberDigit(Prediction):
    box: list[int] = Field(
        min_length=4, max_length=4, description="Where the digit is: left, top, right, bottom, image pixels."
    )


class NumberReading(BaseModel):
    number: str = Field(description='The digits left to right, e.g. "2026"; "" when none was found.')
    confidence: float = Field(ge=0, le=1, description="The probability that every digit is right.")
    uncertain: bool = Field(description="Some digit's confidence is below the model's threshold.")
    digits: list[NumberDigit] = Field(description="One per digit, left to right.")
    error: str | None = Field(default=None, description='Why there is no number, e.g. "no digit found".')


class NumberResponse(BaseModel):
    model: str = Field(description="The name of the model that answered.")
    numbers: list[NumberReading] = Field(description="One per input image, in the order given.")


class FeedbackRequest(BaseModel):
    """A person's correction: the image the model saw and the digit it really is."""

    model_config = ConfigDict(extra="forbid", strict=True)

    pixels: list[Annotated[int, Field(ge=0, le=255, strict=True)]] = Field(
        min_length=PIXELS, max_length=PIXELS, description="The `image` of a prediction: 784 integers 0-255."
    )
    label: StrictDigit = Field(description="The digit it really is, an integer 0-9.")


class FeedbackResponse(BaseModel):
    id: int = Field(description="The stored sample's id.")
    label: Digit
    predicted: Digit = Field(description="What the model answers for this image.")
    stored: int = Field(description="Samples in the feedback database now.")


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    runtime: str = Field(
        description='What runs the network, and why: "torch" when it was named; with auto, e.g. '
        '"onnx (auto: 1.8x torch here, same digits on 1,000 generated images); one image: onnx (0.15 ms '
        'p50)".'
    )


class ModelInfo(BaseModel):
    name: str = Field(description="The shipped model's name, or the file's name.")
    file: str = Field(description="The model file.")
    parameters: int = Field(
        description="Weights plus BatchNorm's running mean and variance, as `mnist-digits models` counts "
        "them (Keras' count); 0 for an ONNX model."
    )
    test_accuracy: float | None = Field(description="Accuracy on MNIST's 10,000 test images, if recorded.")
    metadata: dict[str, Any] = Field(
        description="Everything the model file records: configs, history, versions."
    )


class ErrorBody(BaseModel):
    status: int = Field(description="The HTTP status code, repeated.")
    error: str = Field(description="A short name for the kind of error, e.g. `payload_too_large`.")
    message: str = Field(description="What was wrong and what to do about it.")
