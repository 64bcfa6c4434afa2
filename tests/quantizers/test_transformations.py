import pytest
import torch

from rupq.errors import ConfigError
from rupq.quantizers import Standardization


def test_dims_that_do_not_fit_the_tensor_are_refused():
    # dim [1, 2, 3] is for conv weights; on a Linear weight it must not silently wrap around.
    with pytest.raises(ConfigError, match=r"Standardization: dim \[1, 2, 3\] does not fit a tensor of 2 dims"):
        Standardization(dim=[1, 2, 3]).sigma_shape([10, 4])
    assert Standardization(dim=[1]).sigma_shape([10, 4]) == [10, 1]
    assert Standardization(dim=[1, 2, 3]).sigma_shape([8, 3, 3, 3]) == [8, 1, 1, 1]
    assert torch.Size(Standardization().sigma_shape([8, 3])) == torch.Size([])
