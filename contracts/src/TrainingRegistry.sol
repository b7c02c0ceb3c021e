// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";

/// @title TrainingRegistry
/// @notice Training sessions and the mapping between node accounts and node ids.
/// Only the coordinator writes; session ids are chosen by the coordinator so a
/// resent creation reverts instead of creating a duplicate.
contract TrainingRegistry is AccessControl, Pausable {
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");

    enum Status {
        None,
        Active,
        Completed,
        Cancelled
    }

    struct Session {
        bytes32 modelHash;
        uint64 startTime;
        uint64 endTime;
        Status status;
    }

    mapping(uint256 sessionId => Session) private _sessions;
    mapping(address account => uint64 nodeId) public nodeIdOf;
    mapping(uint64 nodeId => address account) public accountOf;
    uint64 public nodeCount;
    uint256 public sessionCount;

    event SessionCreated(uint256 indexed sessionId, bytes32 modelHash, uint64 startTime);
    event SessionStatusChanged(uint256 indexed sessionId, Status status);
    event NodeRegistered(address indexed account, uint64 indexed nodeId);

    error InvalidAddress();
    error InvalidSessionId();
    error SessionExists(uint256 sessionId);
    error UnknownSession(uint256 sessionId);
    error SessionNotActive(uint256 sessionId, Status status);
    error NodeAlreadyRegistered(address account, uint64 nodeId);

    constructor(address admin, address coordinator) {
        if (admin == address(0) || coordinator == address(0)) revert InvalidAddress();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(COORDINATOR_ROLE, coordinator);
    }

    function createSession(uint256 sessionId, bytes32 modelHash) external onlyRole(COORDINATOR_ROLE) whenNotPaused {
        if (sessionId == 0) revert InvalidSessionId();
        if (_sessions[sessionId].status != Status.None) revert SessionExists(sessionId);
        uint64 start = uint64(block.timestamp);
        _sessions[sessionId] = Session(modelHash, start, 0, Status.Active);
        sessionCount += 1;
        emit SessionCreated(sessionId, modelHash, start);
    }

    function completeSession(uint256 sessionId) external onlyRole(COORDINATOR_ROLE) whenNotPaused {
        _close(sessionId, Status.Completed);
    }

    function cancelSession(uint256 sessionId) external onlyRole(COORDINATOR_ROLE) whenNotPaused {
        _close(sessionId, Status.Cancelled);
    }

    /// @notice Registers accounts as nodes; ids are assigned in order from 1.
    function registerNodes(address[] calldata accounts) external onlyRole(COORDINATOR_ROLE) whenNotPaused {
        uint64 next = nodeCount;
        for (uint256 i = 0; i < accounts.length; ++i) {
            address account = accounts[i];
            if (account == address(0)) revert InvalidAddress();
            uint64 existing = nodeIdOf[account];
            if (existing != 0) revert NodeAlreadyRegistered(account, existing);
            next += 1;
            nodeIdOf[account] = next;
            accountOf[next] = account;
            emit NodeRegistered(account, next);
        }
        nodeCount = next;
    }

    function getSession(uint256 sessionId) external view returns (Session memory) {
        Session memory s = _sessions[sessionId];
        if (s.status == Status.None) revert UnknownSession(sessionId);
        return s;
    }

    function sessionStatus(uint256 sessionId) external view returns (Status) {
        return _sessions[sessionId].status;
    }

    function isActive(uint256 sessionId) public view returns (bool) {
        return _sessions[sessionId].status == Status.Active;
    }

    function pause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _unpause();
    }

    function _close(uint256 sessionId, Status status) private {
        Session storage s = _sessions[sessionId];
        if (s.status == Status.None) revert UnknownSession(sessionId);
        if (s.status != Status.Active) revert SessionNotActive(sessionId, s.status);
        s.status = status;
        s.endTime = uint64(block.timestamp);
        emit SessionStatusChanged(sessionId, status);
    }
}
