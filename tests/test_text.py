import pytest
import torch

from synthseg import SynthsegError, class_queries, class_token_span, class_token_spans
from synthseg.tiny import clip_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def test_spans_cover_multi_token_names(tokenizer):
    prompt = "a photograph of a dog and a dining table"
    ids = tokenizer(prompt).input_ids
    dog = class_token_span(tokenizer, prompt, "dog")
    table = class_token_span(tokenizer, prompt, "dining table")
    assert tokenizer.decode(ids[dog]) == "dog"
    assert table.stop - table.start == 2 and tokenizer.decode(ids[table]) == "dining table"
    assert ids[0] == tokenizer.bos_token_id  # positions index prompt_embeds, special tokens included


def test_queries_average_sub_word_states():
    embeds = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    queries, valid = class_queries(embeds, [[slice(1, 3), slice(4, 5)], [slice(2, 5)]])
    assert queries.shape == (2, 2, 3)
    torch.testing.assert_close(queries[0, 0], embeds[0, 1:3].mean(0))
    torch.testing.assert_close(queries[1, 0], embeds[1, 2:5].mean(0))
    assert valid.tolist() == [[True, True], [True, False]]
    assert queries[1, 1].abs().sum() == 0


def test_bad_class_names(tokenizer):
    with pytest.raises(SynthsegError, match="class 'cat' does not occur in prompt 'a photograph of a dog'"):
        class_token_spans(tokenizer, ["a photograph of a dog"], [["cat"]])
    with pytest.raises(SynthsegError, match="lists a class twice"):
        class_token_spans(tokenizer, ["a dog"], [["dog", "dog"]])
    with pytest.raises(SynthsegError, match="2 prompts but 1 class-name lists"):
        class_token_spans(tokenizer, ["a dog", "a cat"], [["dog"]])
    with pytest.raises(SynthsegError, match="has no class names"):
        class_token_spans(tokenizer, ["a dog"], [[]])
