// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {TrainingRegistry} from "./TrainingRegistry.sol";

/// @title ContributionTracker
/// @notice Per session and node, one storage slot of accumulated contribution.
/// Each (session, epoch) is recorded at most once, so a batch resent after a
/// crash or an RPC outage reverts with EpochAlreadyRecorded instead of counting twice.
contract ContributionTracker is AccessControl, Pausable {
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");

    /// @dev Packed into one 256-bit slot.
    struct Record {
        uint96 computeCredit; // verified compute credit, in the coordinator's fixed-point units
        uint64 updatesAccepted; // samples whose update was accepted
        uint32 successfulRounds;
        uint32 qualityScore; // latest quality multiplier in basis points (5000..15000)
        uint32 lastEpoch;
    }

    struct Contribution {
        uint64 nodeId;
        uint96 computeCredit;
        uint64 updatesAccepted;
        uint32 successfulRounds;
        uint32 qualityScore;
    }

    TrainingRegistry public immutable registry;

    mapping(uint256 sessionId => mapping(uint64 nodeId => Record)) private _records;
    mapping(uint256 sessionId => mapping(uint32 epoch => bool)) public epochRecorded;
    mapping(uint256 sessionId => uint256) public sessionComputeCredit;

    event ContributionRecorded(
        uint256 indexed sessionId,
        uint32 indexed epoch,
        uint64 indexed nodeId,
        uint96 computeCredit,
        uint64 updatesAccepted,
        uint32 successfulRounds,
        uint32 qualityScore
    );
    event EpochRecorded(uint256 indexed sessionId, uint32 indexed epoch, uint256 nodes);

    error InvalidAddress();
    error EmptyBatch();
    error SessionNotActive(uint256 sessionId);
    error EpochAlreadyRecorded(uint256 sessionId, uint32 epoch);
    error UnknownNode(uint64 nodeId);
    error QualityOutOfRange(uint64 nodeId, uint32 qualityScore);

    constructor(TrainingRegistry registry_, address admin, address coordinator) {
        if (address(registry_) == address(0) || admin == address(0) || coordinator == address(0)) {
            revert InvalidAddress();
        }
        registry = registry_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(COORDINATOR_ROLE, coordinator);
    }

    function recordBatch(uint256 sessionId, uint32 epoch, Contribution[] calldata items)
        external
        onlyRole(COORDINATOR_ROLE)
        whenNotPaused
    {
        if (items.length == 0) revert EmptyBatch();
        if (!registry.isActive(sessionId)) revert SessionNotActive(sessionId);
        if (epochRecorded[sessionId][epoch]) revert EpochAlreadyRecorded(sessionId, epoch);
        epochRecorded[sessionId][epoch] = true;

        uint64 knownNodes = registry.nodeCount();
        uint256 credit;
        for (uint256 i = 0; i < items.length; ++i) {
            Contribution calldata c = items[i];
            if (c.nodeId == 0 || c.nodeId > knownNodes) revert UnknownNode(c.nodeId);
            if (c.qualityScore < 5000 || c.qualityScore > 15000) revert QualityOutOfRange(c.nodeId, c.qualityScore);
            Record storage r = _records[sessionId][c.nodeId];
            r.computeCredit += c.computeCredit;
            r.updatesAccepted += c.updatesAccepted;
            r.successfulRounds += c.successfulRounds;
            r.qualityScore = c.qualityScore;
            r.lastEpoch = epoch;
            credit += c.computeCredit;
            emit ContributionRecorded(
                sessionId, epoch, c.nodeId, c.computeCredit, c.updatesAccepted, c.successfulRounds, c.qualityScore
            );
        }
        sessionComputeCredit[sessionId] += credit;
        emit EpochRecorded(sessionId, epoch, items.length);
    }

    function getContribution(uint256 sessionId, uint64 nodeId) external view returns (Record memory) {
        return _records[sessionId][nodeId];
    }

    function pause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _unpause();
    }
}
