"""The retrieval fallback's search: same modality only, a threshold, no normal class for a disease."""
import pytest
import torch

from dpt_core.bank_search import (
    NO_MATCH,
    BankClass,
    BankSearch,
    Hit,
    Miss,
    folded_key,
    is_normal_name,
    shipped_bank_classes,
    words,
)
from dpt_core.describe import GenerationError, GenerationRequest, RetrievalGenerator


def cls(name, sentences, modality="CT", organ="kidney", preset="p"):
    return BankClass(preset, modality, name, tuple(sentences), organ)


KIDNEY = [
    cls("kidney stone", ["A dense calculus sits in the collecting system.", "A staghorn cast fills the pelvis."]),
    cls("kidney tumor", ["A solid enhancing mass bulges from the cortex.", "A heterogeneous mass with necrosis."]),
    cls("normal kidney", ["Smooth cortex of even thickness with a crisp corticomedullary border.",
                          "A metastasis-like pattern appears nowhere; the sinus fat is clean."]),
]
SKIN = [cls("basal cell carcinoma", ["Arborising vessels over a pearly papule."], "dermatoscopy", "skin")]


def test_spellings_plurals_and_synonyms_fold():
    assert words("Oesophagitis") == words("esophagitis")
    assert words("tumours haemorrhages oedema caecum keratinised") == words("tumors hemorrhages edema cecum keratinized")
    assert words("polyps crypts") == ["polyp", "crypt"]
    assert words("adenoma") == ["adenoma", "neoplasm"]  # a named tumour kind also counts as a tumour
    assert folded_key("renal calculus") == folded_key("kidney stone")
    assert is_normal_name("normal OCT scan") and is_normal_name("healthy knee") and is_normal_name("colon benign tissue")
    assert not is_normal_name("benign tumor")


def test_only_banks_of_the_same_modality_are_searched():
    search = BankSearch(KIDNEY + SKIN)
    assert isinstance(search.search("basal cell carcinoma", "dermatoscopy"), Hit)
    miss = search.search("basal cell carcinoma", "CT")  # the class exists, but in another modality
    assert isinstance(miss, Miss) and NO_MATCH in miss.reason
    miss = search.search("kidney stone", "ultrasound")
    assert isinstance(miss, Miss) and "cover CT, dermatoscopy" in miss.reason


def test_generic_words_never_match_alone():
    search = BankSearch(KIDNEY)
    for query in ("normal", "tumour", "cell", "scan", "abnormal tissue", "large mass"):
        found = search.search(query, "CT")
        assert isinstance(found, Miss) and "generic" in found.reason, query
    found = search.search("kidney", "CT")  # the organ alone fits every class
    assert isinstance(found, Miss) and set(found.candidates) == {"kidney stone", "kidney tumor"}
    colon = [cls("polyps", ["A rounded protrusion."], "endoscopy", "colon"),
             cls("ulcerative colitis", ["Red granular mucosa."], "endoscopy", "colon")]
    found = BankSearch(colon).search("colon", "endoscopy")  # the organ is context, not a finding
    assert isinstance(found, Miss) and "organ" in found.reason
    assert BankSearch(colon).search("colon polyp", "endoscopy").bank_class.name == "polyps"


def test_a_disease_query_never_gets_a_normal_class():
    # The only sentence that mentions "metastasis" belongs to the normal class; a metastasis
    # is a tumour of the kidney, never its normal class.
    found = BankSearch(KIDNEY).search("kidney metastasis", "CT")
    assert isinstance(found, Hit) and found.bank_class.name == "kidney tumor"
    found = BankSearch(KIDNEY).search("nowhere", "CT")  # only in the normal class's sentence
    assert isinstance(found, Miss)
    found = BankSearch(KIDNEY).search("unremarkable kidney cortex", "CT")
    assert isinstance(found, Hit) and found.bank_class.name == "normal kidney"


def test_sentences_are_searched_as_well_as_names():
    found = BankSearch(KIDNEY).search("staghorn calculus", "CT")
    assert isinstance(found, Hit) and found.bank_class.name == "kidney stone"
    assert found.method == "words"


def test_below_the_threshold_it_says_no_similar_class():
    found = BankSearch(KIDNEY).search("renal infarct", "CT")
    assert isinstance(found, Miss) and NO_MATCH in found.reason
    # a word the class lacks keeps it out: "hypertensive retinopathy" is not "diabetic retinopathy"
    eye = [cls("diabetic retinopathy", ["Dot haemorrhages and exudates."], "fundus photography", "retina"),
           cls("glaucoma", ["A deep, wide cup."], "fundus photography", "retina")]
    assert isinstance(BankSearch(eye).search("hypertensive retinopathy", "fundus photography"), Miss)
    assert isinstance(BankSearch(eye).search("diabetic haemorrhages", "fundus photography"), Hit)
    # without the class name, one sentence must hold the whole query: scattered words are no evidence
    assert isinstance(BankSearch(KIDNEY).search("staghorn collecting", "CT"), Miss)


def test_equal_matches_are_ambiguous_not_a_guess():
    bank = [cls("minimal osteoarthritis", ["Small spurs."], "X-ray", "knee"),
            cls("marked osteoarthritis", ["Large spurs."], "X-ray", "knee")]
    found = BankSearch(bank).search("osteoarthritis", "X-ray")
    assert isinstance(found, Miss) and set(found.candidates) == {"minimal osteoarthritis", "marked osteoarthritis"}


def test_embedding_needs_the_threshold_and_failures_fall_back_to_words():
    def far(phrases):  # every phrase points elsewhere: cosine 0 with the query
        return torch.tensor([[1.0, 0.0] if i == 0 else [0.0, 1.0] for i in range(len(phrases))])

    found = BankSearch(KIDNEY, embed=far).search("staghorn calculus", "CT")
    assert isinstance(found, Hit) and found.method == "words"  # the words still find it

    def broken(phrases):
        raise RuntimeError("encoder not loaded")

    assert BankSearch(KIDNEY, embed=broken).search("staghorn calculus", "CT").method == "words"


# ---------------------------------------------------------------------------- the shipped banks

SHIPPED = BankSearch(shipped_bank_classes())


@pytest.mark.parametrize("query, modality", [
    ("renal cell carcinoma", "CT"), ("breast cyst", "ultrasound"), ("brain metastasis", "MRI"),
    ("normal", "OCT"), ("low-grade glioma", "MRI"), ("oesophagitis", "endoscopy"), ("colon polyp", "endoscopy"),
])
def test_shipped_banks_keep_to_the_modality_and_never_answer_disease_with_normal(query, modality):
    found = SHIPPED.search(query, modality)
    if isinstance(found, Hit):
        assert found.bank_class.modality == modality
        assert not is_normal_name(found.bank_class.name), (query, found.bank_class.name)


def test_shipped_banks_answers_clinicians_expect():
    assert SHIPPED.search("normal", "OCT").reason.startswith(NO_MATCH)
    assert SHIPPED.search("Oesophagitis", "endoscopy").bank_class.name == "esophagitis"
    assert SHIPPED.search("colon polyp", "endoscopy").bank_class.name == "polyps"
    assert SHIPPED.search("macular oedema", "OCT").bank_class.name == "diabetic macular edema"
    assert isinstance(SHIPPED.search("hypertensive retinopathy", "fundus photography"), Miss)


def test_the_generator_reports_a_miss_as_a_readable_error():
    gen = RetrievalGenerator()  # every shipped bank
    with pytest.raises(GenerationError, match=NO_MATCH):
        gen.generate(GenerationRequest("normal", "OCT", "retina"))
    result = gen.generate(GenerationRequest("colon polyp", "endoscopy", "colon", n=4))
    assert len(result.sentences) == 4 and "nearest class: polyps" in result.note and "kvasir" in result.note


def test_the_encoder_chooses_only_among_classes_sharing_a_word_with_the_query():
    def same(phrases):  # the encoder finds every phrase identical: cosine 1 everywhere
        return torch.ones(len(phrases), 4)

    # "urolith" is in no class: the encoder's cosine alone proposes nothing
    assert isinstance(BankSearch(KIDNEY, embed=same).search("urolith", "CT"), Miss)

    def stone_like(phrases):  # the query and the kidney-stone name point the same way
        return torch.tensor([[1.0, 0.0] if ("staghorn" in p and " in CT" in p) or p == "kidney stone in CT"
                             else [0.0, 1.0] for p in phrases])

    found = BankSearch(KIDNEY, embed=stone_like).search("staghorn", "CT")
    assert isinstance(found, Hit) and found.method == "embedding" and found.bank_class.name == "kidney stone"


def test_custom_classes_without_a_shipped_modality_get_a_clear_answer():
    with pytest.raises(GenerationError, match="the shipped banks cover .*MRI.*not medical imaging"):
        RetrievalGenerator().generate(GenerationRequest("glioma tumor", "medical imaging", ""))
