"""Ensemble templates: the paper's reference template unchanged, the others true to each dataset."""
import pytest

from dpt_core.presets import load_preset

PAPER = {  # method.md section 4
    "btmri": "a MR photo of a {} in the brain.",
    "busi": "a ultrasound photo of a {} in the breast.",
    "chmnist": "a histopathological photo of a {}.",
    "covid": "a chest X-ray photo of a {} affected by COVID-19 in the lung.",
    "ctkidney": "a CT photo of a {} in the kidney.",
    "dermamnist": "a dermatoscopy photo of a {} in the skin.",
    "kneexray": "a frontal X-ray photo of a {} in the knee joint.",
    "kvasir": "a endoscopic photo of a {} in the colon.",
    "lungcolon": "a histopathological photo of a {}.",
    "octmnist": "a OCT photo of a {}.",
    "retina": "a photo of a {} presented in image.",
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_the_paper_reference_template_is_unchanged_and_first(name):
    p = load_preset(name)
    assert p.template == PAPER[name] and p.templates[0] == PAPER[name]


def others(name):
    p = load_preset(name)
    return [t for t in p.templates if t != p.template]


def test_upper_gi_classes_are_not_called_colonoscopy():
    # Kvasir holds oesophagitis, pylorus and Z-line (upper GI) next to colon classes.
    assert not any("colonoscop" in t.lower() for t in others("kvasir"))


def test_knee_images_are_not_called_anteroposterior():
    # The knee images are posteroanterior fixed-flexion views; "frontal" covers them.
    assert not any("anteroposterior" in t.lower() for t in others("kneexray"))


def test_kidney_ct_is_not_only_axial():
    # The kidney CT set has coronal slices too.
    assert all("coronal" in t.lower() for t in others("ctkidney") if "axial" in t.lower())


def test_chest_films_are_not_only_posteroanterior():
    # Many COVID-19 chest films are portable anteroposterior images.
    assert all("anteroposterior" in t.lower() for t in others("covid") if "posteroanterior" in t.lower())


def test_cataract_is_not_called_a_retinal_finding():
    # A cataract clouds the lens: the photograph is of an eye seen through it, not a finding of the retina.
    assert not any("of the retina" in t.lower() for t in others("retina"))
