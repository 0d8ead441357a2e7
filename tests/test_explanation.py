"""``dpt_core.explanation.explain_image``: the one explanation call the app displays."""
import numpy as np
import pytest
from conftest import SYNTH_CLASSES, synthetic_image

from dpt_core.errors import InputError
from dpt_core.explanation import explain_image
from dpt_core.predictor import Predictor
from dpt_core.workflow import setup_classes


@pytest.fixture(scope="module")
def predictor(tiny):
    s = setup_classes(None, SYNTH_CLASSES)
    return Predictor(tiny, s.class_names, s.templates, s.descriptions, template=s.template, n_ctx=s.n_ctx)


def test_class_phrase_and_rollout(predictor):
    image = synthetic_image(1, np.random.default_rng(0))
    default = explain_image(predictor, image)
    predicted = predictor.predict([image])[0].prediction
    assert default.method == "gradcam" and default.target == predicted  # the predicted class by default
    chosen = explain_image(predictor, image, "gradcam", target_class="green noise")
    assert chosen.target == "green noise" and chosen.heatmap.shape == default.heatmap.shape
    phrase = explain_image(predictor, image, "gradcam", phrase="  bright   stripes ")
    assert phrase.target == "bright stripes"  # whitespace normalised; a phrase wins over the class
    rollout = explain_image(predictor, image, "rollout", target_class="green noise")
    assert rollout.method == "rollout" and float(rollout.heatmap.max()) > 0


def test_unknown_method_or_class_is_a_user_error(predictor):
    image = synthetic_image(0, np.random.default_rng(1))
    with pytest.raises(InputError, match="unknown explanation method"):
        explain_image(predictor, image, "saliency")
    with pytest.raises(InputError, match="unknown class"):
        explain_image(predictor, image, "gradcam", target_class="not a class")
